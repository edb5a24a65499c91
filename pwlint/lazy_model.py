"""Settings classes declared like pydantic models, validated by one built on first use.

Importing pydantic and building a model's validator costs more than the rest of a
small lint put together, and most runs configure nothing: a rule's options and the
``[tool.pwlint]`` keys then hold their defaults. A :class:`LazyModel` subclass is
written as a pydantic model (annotated class attributes with defaults, ``option()``
for a description or constraints); its defaults are read without pydantic, and the
pydantic model that validates configured values is built from the same declaration
the first time there are values to validate (:meth:`LazyModel.pydantic_model`).
"""

from __future__ import annotations

import copy
from typing import Any


class _Option:
    """What :func:`option` declares, turned into a ``pydantic.Field`` when validating."""

    __slots__ = ("default", "field_arguments")

    def __init__(self, default: Any, field_arguments: dict[str, Any]) -> None:
        self.default = default
        self.field_arguments = field_arguments


def option(default: Any, **field_arguments: Any) -> Any:
    """A field's default with ``pydantic.Field`` arguments (``description``, ``ge``, ``gt``,
    ``le``...), declared without importing pydantic."""
    return _Option(default, field_arguments)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _PydanticFields:
    """``cls.model_fields`` as pydantic has it (names, defaults, descriptions)."""

    def __get__(self, instance: Any, owner: type[LazyModel]) -> dict:
        return owner.pydantic_model().model_fields


def _uses_pydantic(value: Any) -> bool:
    # validators and pydantic's own Field carry behaviour only pydantic can apply
    return type(value).__module__.partition(".")[0] in ("pydantic", "pydantic_core")


class LazyModel:
    """Base class: fields are annotated class attributes, keys are kebab-case in
    configuration files, unknown keys are errors.

    ``model_validate(values)`` returns an instance of the subclass whose attributes are
    the validated values (pydantic's ``ValidationError`` on a bad value); without
    values it returns the defaults, through pydantic only when the class uses pydantic
    itself (``pydantic.Field``, validators, ``validate_default``) or has a field
    without a default. ``model_config`` is pydantic's, as a plain dict.
    """

    model_config: dict[str, Any] = {"extra": "forbid", "alias_generator": _kebab, "populate_by_name": True}
    model_fields = _PydanticFields()
    _field_names: tuple[str, ...] = ()
    #: field name -> default, or None when the defaults need pydantic
    _defaults: dict[str, Any] | None = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._pydantic = None
        own = cls.__dict__.get("__annotations__", {})
        names = [n for n in own if not n.startswith("_")]
        cls._field_names = tuple(dict.fromkeys([*cls._field_names, *names]))
        defaults = None if cls._defaults is None else dict(cls._defaults)
        plain = defaults is not None and not cls.model_config.get("validate_default") and not any(
            _uses_pydantic(value) for value in cls.__dict__.values()
        ) and not any("ClassVar" in str(hint) for hint in own.values())
        if plain:
            for name in names:
                if name not in cls.__dict__:
                    plain = False  # a required field: pydantic reports it missing
                    break
                value = cls.__dict__[name]
                defaults[name] = value.default if isinstance(value, _Option) else value
        cls._defaults = defaults if plain else None

    @classmethod
    def pydantic_model(cls) -> type:
        """The pydantic model of this declaration (imports pydantic; built once)."""
        if cls.__dict__.get("_pydantic") is None:
            from pydantic import BaseModel, Field

            bases = tuple(
                (base.pydantic_model() if base is not LazyModel else BaseModel)
                if isinstance(base, type) and issubclass(base, LazyModel) else base
                for base in cls.__bases__
            )
            namespace = {
                name: Field(value.default, **value.field_arguments) if isinstance(value, _Option) else value
                for name, value in cls.__dict__.items()
                if name not in ("__dict__", "__weakref__", "_pydantic", "_field_names", "_defaults")
            }
            if LazyModel in cls.__bases__:
                namespace.setdefault("model_config", cls.model_config)
            cls._pydantic = type(cls.__name__, bases, namespace)
        return cls._pydantic

    @classmethod
    def model_validate(cls, values: dict[str, Any]) -> LazyModel:
        if not values and cls._defaults is not None:
            return cls._with({name: copy.deepcopy(value) for name, value in cls._defaults.items()})
        validated = cls.pydantic_model().model_validate(values)
        return cls._with({name: getattr(validated, name) for name in cls._field_names})

    @classmethod
    def _with(cls, values: dict[str, Any]) -> LazyModel:
        instance = object.__new__(cls)
        instance.__dict__.update(values)
        return instance

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(type(self).model_validate(values).__dict__)

    def model_dump(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._field_names}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.model_dump() == self.model_dump()

    def __setattr__(self, name: str, value: Any) -> None:
        if self.model_config.get("frozen"):
            raise AttributeError(f"{type(self).__name__} is frozen: '{name}' cannot be set")
        super().__setattr__(name, value)

    def __hash__(self) -> int:
        if not self.model_config.get("frozen"):
            raise TypeError(f"unhashable type: '{type(self).__name__}'")
        return hash((type(self), *self.model_dump().values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.model_dump().items())
        return f"{type(self).__name__}({fields})"
