"""``python -m mmke_eval.cli`` (and ``torchrun -m mmke_eval.cli``): the ``mmke-eval`` command."""

import sys

from mmke_eval.cli.main import main

sys.exit(main())
