import os

# Triton runs on CPU tensors only through its interpreter, and only if this is set before import.
os.environ.setdefault("TRITON_INTERPRET", "1")
