"""Keras glue: roll a model, load a model, the pix-to-weight network as Keras."""
