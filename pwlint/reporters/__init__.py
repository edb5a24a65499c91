"""Output formats: each renders a LintResult to a stream."""
