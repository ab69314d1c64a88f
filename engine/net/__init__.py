"""The network: its definition (encoders, decoder, heads), the export wrapper with the colour math fused in,
and checkpoint loading; shared by training, export and the PyTorch backend. Imports only ``engine.core``.
"""
