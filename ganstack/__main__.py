"""``python -m ganstack ...`` (also ``torchrun -m ganstack train ...``) runs the ``ganstack`` command."""
from ganstack.training.cli import main

if __name__ == "__main__":
    main()
