"""ARGenSeg referring segmentation for ROS 2.

Kept light on purpose: importing the package imports neither ROS nor torch; import the
submodules (``argenseg_ros.engine.segmenter``, ``argenseg_ros.nodes.segment_node``, ...) for those.
"""

from pkgutil import extend_path

# The generated ROS interface modules (argenseg_ros.action, argenseg_ros.argenseg_ros_s__*.so)
# exist only in an installed copy of this package (setup.py builds them with rosidl). When this
# package is imported from a source tree (the tests, PYTHONPATH=<repository>), this also
# searches the other argenseg_ros folders on sys.path, so `from argenseg_ros.action import
# Segment` finds the installed type while every other module comes from the source tree.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"

PACKAGE_NAME = "argenseg_ros"
NODE_NAME = "argenseg"
