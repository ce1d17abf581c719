"""`python -m epyc_whisper`."""

from epyc_whisper.cli import main

main()
