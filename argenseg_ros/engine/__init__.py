"""The ARGenSeg engine, without ROS: the multi-scale VQ-VAE, the InternVL backbone with its
next-scale heads, the one generation loop, the release's conversion, and the `Segmenter` API
(image + instruction -> reply, masks, timings) that the ROS nodes call."""
