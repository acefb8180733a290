"""Entry point: `python -m omnibridge.train --preset shapes --out assets/omnibridge-shapes`."""

from omnibridge.training.cli import main

if __name__ == "__main__":
    main()
