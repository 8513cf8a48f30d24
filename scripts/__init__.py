# `python -m scripts.X` imports this package before the script itself, so this runs before torch is
# imported: the one place to set up the interpreter for every stage.
from nanochat.common import use_bytecode_cache

use_bytecode_cache()
