"""The `.wroll` container: zip members, manifest, code image, limits.

This layer knows nothing of Keras or TensorFlow; it needs numpy, pillow and
zstandard only.
"""
