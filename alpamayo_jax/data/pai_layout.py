"""PhysicalAI-AV dataset layout: camera names and ids, feature table, file names (SPEC section 4).

Shared by the reader (`pai.py`) and the writer (`pai_writer.py`) so that what one writes the other
reads; the templates follow the released dataset's `features.csv` (as read by the `physical-ai-av`
devkit's `Features`).
"""

import json

import pandas as pd

# Camera feature names in camera-index order (SPEC 1.2): index i is CAMERA_NAMES[i].
CAMERA_NAMES = (
    "camera_cross_left_120fov",
    "camera_front_wide_120fov",
    "camera_cross_right_120fov",
    "camera_rear_left_70fov",
    "camera_rear_tele_30fov",
    "camera_rear_right_70fov",
    "camera_front_tele_30fov",
)
CAMERA_IDS = {name: i for i, name in enumerate(CAMERA_NAMES)}
# The released model's four cameras, in index order (0, 1, 2, 6).
DEFAULT_CAMERAS = (
    "camera_cross_left_120fov",
    "camera_front_wide_120fov",
    "camera_cross_right_120fov",
    "camera_front_tele_30fov",
)

EGOMOTION = "egomotion"
OBSTACLES = "obstacle.offline"
INTRINSICS = "camera_intrinsics"
EXTRINSICS = "sensor_extrinsics"
VEHICLE_DIMENSIONS = "vehicle_dimensions"

CLIP_INDEX_FILE = "clip_index.parquet"
FEATURES_FILE = "features.csv"
FEATURE_PRESENCE_FILE = "metadata/feature_presence.parquet"
REASONING_FILE = "reasoning/ood_reasoning.parquet"

EGOMOTION_COLUMNS = (
    "timestamp", "qx", "qy", "qz", "qw", "x", "y", "z", "vx", "vy", "vz", "ax", "ay", "az", "curvature",
)  # fmt: skip
INTRINSICS_COLUMNS = (
    ("width", "height", "cx", "cy")
    + tuple(f"bw_poly_{i}" for i in range(5))
    + tuple(f"fw_poly_{i}" for i in range(5))
)
EXTRINSICS_COLUMNS = ("qx", "qy", "qz", "qw", "x", "y", "z")
VEHICLE_DIMENSIONS_COLUMNS = (
    "length",
    "width",
    "height",
    "rear_axle_to_bbox_center",
    "wheelbase",
    "track_width",
)
OBSTACLE_COLUMNS = (
    "timestamp_us", "track_id", "label_class", "center_x", "center_y", "center_z",
    "size_x", "size_y", "size_z",
    "orientation_x", "orientation_y", "orientation_z", "orientation_w", "reference_frame_timestamp_us",
)  # fmt: skip
# Optional intrinsics column naming the camera model ("ftheta" or "pinhole"); absent means f-theta.
CAMERA_MODEL_COLUMN = "camera_model"


def _camera_row(name: str) -> dict:
    return {
        "feature": name,
        "directory": "camera",
        "chunk_path": f"camera/{name}/{name}.chunk_{{chunk_id:04d}}.zip",
        "clip_files_in_zip": json.dumps(
            {
                "video": f"{{clip_id}}.{name}.mp4",
                "frame_timestamps": f"{{clip_id}}.{name}.timestamps.parquet",
            }
        ),
    }


def _zip_label_row(name: str) -> dict:
    return {
        "feature": name,
        "directory": "labels",
        "chunk_path": f"labels/{name}/{name}.chunk_{{chunk_id:04d}}.zip",
        "clip_files_in_zip": json.dumps({name: f"{{clip_id}}.{name}.parquet"}),
    }


def _calibration_row(name: str) -> dict:
    return {
        "feature": name,
        "directory": "calibration",
        "chunk_path": f"calibration/{name}/{name}.chunk_{{chunk_id:04d}}.parquet",
        "clip_files_in_zip": "",
    }


def features_table() -> pd.DataFrame:
    """The `features.csv` table (one row per feature) written by the writer."""
    rows = [_camera_row(n) for n in CAMERA_NAMES]
    rows += [_zip_label_row(EGOMOTION), _zip_label_row(OBSTACLES)]
    rows += [_calibration_row(n) for n in (INTRINSICS, EXTRINSICS, VEHICLE_DIMENSIONS)]
    return pd.DataFrame(rows)
