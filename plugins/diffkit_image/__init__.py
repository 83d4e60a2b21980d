"""The built-in image domain of diffkit: pictures as ``(B, C, H, W)`` tensors in [-1, 1].

A class-conditional U-Net (:mod:`.unet`), the handwritten digits of scikit-learn and folders of
PNG/JPEG/WebP files (:mod:`.data`), PNG output and editing inputs (:mod:`.files`), and offline
scores (:mod:`.evaluation`), tied together by :class:`.domain.ImageDomain`.
"""
