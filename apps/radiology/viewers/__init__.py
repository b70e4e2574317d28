"""The viewers a clinician opens from a signed link: the self-hosted OHIF v3 build (its
app-config.js and dist, served on the viewer port) and the built-in lite viewer, one server-rendered
page for slow links and cheap phones.

Owns: the pages and the viewer configuration. The lite viewer draws with dicomweb's frame
decoding and rendering, so viewers may import dicomweb (same top layer) and everything below;
nothing below imports viewers.
"""
