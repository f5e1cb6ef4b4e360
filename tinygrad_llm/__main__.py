"""``python -m tinygrad_llm ...`` is the ``tinygrad-llm`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
