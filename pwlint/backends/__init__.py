"""Fix backends: each carries out format-neutral fix plans on one model format."""

