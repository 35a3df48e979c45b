"""`python -m halpc.cli ...`: how `halpc run --spawn` starts one run per source."""
from halpc.cli import main

main()
