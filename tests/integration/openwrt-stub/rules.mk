# SPDX-License-Identifier: GPL-3.0-or-later
# A stand-in for OpenWrt's $(TOPDIR)/rules.mk: only the variables a package Makefile reads, set to
# paths of this check. There is no OpenWrt SDK in Debian's archive; see openwrt_package_test.sh.
INCLUDE_DIR:=$(TOPDIR)/include
BUILD_DIR:=$(STUB_WORK)/build
PKG_BUILD_DIR=$(BUILD_DIR)/$(PKG_NAME)-$(PKG_VERSION)
DL_DIR:=$(STUB_WORK)/dl
STAGING_DIR:=$(STUB_WORK)/staging
GNU_TARGET_NAME:=mipsel-openwrt-linux-musl
GNU_HOST_NAME:=x86_64-pc-linux-gnu
TARGET_CONFIGURE_OPTS:=CC=mipsel-openwrt-linux-musl-gcc CXX=mipsel-openwrt-linux-musl-g++
TARGET_CFLAGS:=-Os -pipe
TARGET_LDFLAGS:=
CP:=cp -fpR
TAR:=tar
INSTALL_DIR:=install -d -m0755
INSTALL_BIN:=install -m0755
INSTALL_DATA:=install -m0644
INSTALL_CONF:=install -m0600
