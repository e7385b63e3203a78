"""Frames: who renders what (`assignment`), and how a rendered frame is stored (`pipeline`,
whose first stage, claiming the frames of a batch of uploads, is `claims`)."""
