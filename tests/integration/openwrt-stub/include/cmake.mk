# SPDX-License-Identifier: GPL-3.0-or-later
# Stand-in for OpenWrt's include/cmake.mk: the default configure step, as a visible command.
define Build/Configure/Default
	cmake -DCMAKE_BUILD_TYPE=MinSizeRel $(CMAKE_OPTIONS) -S $(PKG_BUILD_DIR) -B $(PKG_BUILD_DIR)
endef
