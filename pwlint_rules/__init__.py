"""pwlint's built-in rules, registered through the same pluggy hook as any plugin."""

from pwlint.hookspecs import hookimpl
from pwlint_rules import (
    channel_alignment,
    conv_bias_before_norm,
    flatten_dense_head,
    heavy_conv,
    linear_chain,
    missing_norm,
    oversized_dense,
)

BUILTIN_RULES = (
    flatten_dense_head.RULE,
    oversized_dense.RULE,
    missing_norm.RULE,
    conv_bias_before_norm.RULE,
    heavy_conv.RULE,
    linear_chain.RULE,
    channel_alignment.RULE,
)


@hookimpl
def pwlint_register_rules(register):
    for rule in BUILTIN_RULES:
        register(rule)
