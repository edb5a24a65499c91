"""torch.export archives: the JSON program reader and the fix backend."""
