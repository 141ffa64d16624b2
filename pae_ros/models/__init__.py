"""Neural networks: backbones, APR teachers, the pose auto-encoder (PAE) and the image decoder."""
from .apr import APR, MSTransformerAPR, PoseNetAPR, build_apr
from .backbone import build_backbone
from .decoder import build_decoder
from .pae import PoseAutoEncoder

__all__ = ["APR", "MSTransformerAPR", "PoseNetAPR", "build_apr", "build_backbone", "build_decoder", "PoseAutoEncoder"]
