"""The command line's choices and defaults, written out so that building the parser (and ``--help``) imports no
torch. ``tests/test_cli.py`` checks each against the library constant it copies."""

DEVICES_HELP = "auto (default: cuda, else mps, else cpu), cpu, cuda, cuda:N or mps"
PROFILES = ("auto", "quick", "full")  # crlearn.training.config.PROFILES, plus auto
NORMALIZATIONS = ("none", "standardize", "equalize")  # crlearn.data.folder.NORMALIZATIONS
VARIANTS = ("unet", "unet_aspp", "crnet")  # crlearn.nn.model.VARIANTS
FITS = ("pad", "stretch")  # crlearn.data.slices.FITS
THRESHOLD = 0.5  # crlearn.tasks.classifier.THRESHOLD
