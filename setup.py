"""ament_python build of pae_ros (also a plain pip/setuptools package for the offline tools)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "pae_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    package_data={PACKAGE: ["config/*.yaml"]},
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="pae_ros maintainers",
    maintainer_email="maintainers@pae-ros.invalid",
    description="Camera Pose Auto-Encoder localization for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "localizer = pae_ros.ros.localizer_node:main",
            "pae = pae_ros.cli:main",
        ],
    },
)
