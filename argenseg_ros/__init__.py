"""ARGenSeg referring segmentation for ROS 2.

Kept light on purpose: importing the package imports neither ROS nor torch; import the
submodules (``argenseg_ros.engine.segmenter``, ``argenseg_ros.nodes.segment_node``, ...) for those.
"""

__version__ = "0.1.0"

PACKAGE_NAME = "argenseg_ros"
NODE_NAME = "argenseg"
