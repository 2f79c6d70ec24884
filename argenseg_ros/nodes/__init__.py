"""The ROS 2 layer: the segmentation node, the demo camera, the command-line sender, the demo
orchestrator, and their ROS helpers (image messages, validated parameters). The only modules of the
package that import rclpy or ROS messages; they call the engine's `Segmenter` and nothing deeper."""
