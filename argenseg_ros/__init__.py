"""ARGenSeg referring segmentation for ROS 2.

Kept light on purpose: importing the package imports neither ROS nor torch; import the
submodules (``argenseg_ros.segmenter``, ``argenseg_ros.segment_node``, ...) for those.
"""

__version__ = "0.1.0"

PACKAGE_NAME = "argenseg_ros"
NODE_NAME = "argenseg"
