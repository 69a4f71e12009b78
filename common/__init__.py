"""Small pieces every part of ldsrig shares: user-facing errors and dataclass configs."""
