"""TorchScript archives: code parsed and interpreted symbolically, never run."""
