"""ds9_utils: the small package behind "DS9 — Let's Build an LLM".

One concept per module, in the order data flows:
settings -> download -> parse -> corpus -> tokenizers -> model -> train -> generate -> plots.
"""

__version__ = "0.1.0"
