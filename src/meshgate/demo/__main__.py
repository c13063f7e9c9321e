"""``python -m meshgate.demo --service NAME [...]``: one demo service alone (a mesh "pod").

See :func:`meshgate.demo.services.main`; ``meshgate demo`` runs all of them behind the gateway.
"""

import sys

from .services import main

sys.exit(main())
