"""The synthetic tabletop world of the embedded model and that model's life, without ROS: the
scene generator (`world`), the on-disk dataset, the trainers and the held-out evaluation."""
