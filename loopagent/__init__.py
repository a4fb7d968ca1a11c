"""loopagent: Recursive Language Models over looped transformers.

The long input lives in a confined Python REPL (:mod:`loopagent.environments`);
a root model writes code over it and calls child models on pieces, and every
call gets its own loop budget.
"""

__version__ = "0.1.0"
