"""tomostrain: tomography and 4D-STEM strain mapping for in situ TEM of battery electrodes.

Arrays may be NumPy (CPU) or CuPy (GPU); every function runs where its input lives.
"""
__version__ = "0.1.0"
