"""Format loaders: each turns one kind of model file into a ModelGraph."""
