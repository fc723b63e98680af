"""``python -m shim.ctl`` = ``pyrunc``."""

from shim.ctl import main

main()
