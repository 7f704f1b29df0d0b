"""Codecs: quantisers and pix-to-weight decoders, on numpy arrays only."""
