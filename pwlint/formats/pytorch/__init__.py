"""PyTorch: .pt2 (torch.export) and TorchScript archives, read without torch; the .pt2 fix backend."""
