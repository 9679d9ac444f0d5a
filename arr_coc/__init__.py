"""ARR-COC: answer questions about images from the visual tokens that matter.

The library has no server and no tracking: `texture` -> `knowing` -> `balancing`
-> `scorer` rate visual tokens, `selection` keeps a budget of them, `vlm` answers.
"""

__version__ = "0.2.0"
