"""`edgekit-run`: thin argparse adapters over the runtime API (main), shared options, generation."""
