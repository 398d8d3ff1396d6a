"""The HoVer-Net graph (tensorpack ModelDesc), its losses and its inference tensor names."""
