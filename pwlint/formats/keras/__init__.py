"""Keras (.keras, .h5/.hdf5, Keras 1 to 3): the static reader and the fix backend."""
