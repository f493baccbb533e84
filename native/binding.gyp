# Builds the kernel-layer addon (native/ntm.c) to native/build/Release/ntm.node.
# Plain C against node_api.h and uv.h only, so it cross-compiles in the OpenWrt SDK.
{
  "targets": [
    {
      "target_name": "ntm",
      "sources": ["ntm.c"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-O2"]
    }
  ]
}
