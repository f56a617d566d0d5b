"""File names, tensor-name prefixes and format versions, defined once."""

import re

FORMAT_VERSION = 1
WEIGHTS_FILE = "adapter.safetensors"
METADATA_FILE = "adapter.json"
VERSION_DIR_PREFIX = "v"
# The store's index (app/adapters/index.py), in the store root; a new format rebuilds it.
INDEX_FILE = ".index.sqlite3"
INDEX_FORMAT = 2
# Key of the JSON metadata embedded in the safetensors header, so one file is self-describing.
SAFETENSORS_METADATA_KEY = "adapter_serve"

ADAPTER_PREFIX = "adapter."
HEAD_PREFIX = "head."

# Task names become directory names: no dots, slashes or upper case, so no path tricks.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)

# A safetensors header larger than this is refused before it is parsed.
MAX_SAFETENSORS_HEADER_BYTES = 1024 * 1024
