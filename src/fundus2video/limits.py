"""Ceilings shared by the configuration check, Hub folders and the commands. Past them no machine
runs the network or the video, so a mistyped value fails in one line instead of hanging or
exhausting the memory."""

MAX_SIZE = 4096  # image side (the paper trains at 512)
MAX_FRAMES = 1000  # frames of a video: longer than any angiography protocol
MAX_FPS = 240  # frame rate of a written video: beyond any player
MAX_WINDOW = 64  # frames predicted per window (K)
MAX_DOWNSAMPLE = 12  # 4096 pixels halved 12 times leave one
MAX_BLOCKS = 64  # residual blocks
MAX_WIDTH = 4096  # ngf, ndf, the PatchNCE projection's width
MAX_IMAGE_PIXELS = 100_000_000  # a photo or frame read from disk: fundus cameras stay under 30 megapixels
MAX_IMAGE_SIDE = 20_000
MAX_VIDEO_PIXELS = 2**30  # frames x height x width of one generated video: 4 GiB as float32
MAX_CONFIG_BYTES = 1_000_000  # a Hub folder's config.json: fundus2video writes about 3 kB
MAX_CASE_ROWS = 100_000  # rows of a folder layout's cases.csv: more case folders than any angiography archive
