"""The command line's choices and defaults, written out so that building the parser (and ``--help``) imports no
torch. ``tests/test_cli.py`` checks each against the library constant it copies."""

DEVICES_HELP = "auto (default: cuda, else mps, else cpu), cpu, cuda, cuda:N or mps"
NO_AMP_HELP = ("train in float32 (default: bf16/fp16 autocast on CUDA, and in the quick profile bf16 on a CPU with bf16 "
               "instructions)")
CROP_HELP = ("train on random N x N windows of the slices (multiple of 32, at most the size; 0: whole slices); "
             "evaluation and prediction always see whole slices")
PROFILES = ("auto", "quick", "full")  # crlearn.training.config.PROFILES, plus auto
NORMALIZATIONS = ("none", "standardize", "equalize")  # crlearn.data.folder.NORMALIZATIONS
VARIANTS = ("unet", "unet_aspp", "crnet")  # crlearn.nn.model.VARIANTS
FITS = ("pad", "stretch")  # crlearn.data.slices.FITS
THRESHOLD = 0.5  # crlearn.tasks.classifier.THRESHOLD
