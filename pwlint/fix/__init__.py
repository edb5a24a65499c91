"""Format-neutral fixing: the round loop and the shared fix arithmetic."""
