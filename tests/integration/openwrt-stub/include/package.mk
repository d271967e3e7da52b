# SPDX-License-Identifier: GPL-3.0-or-later
# Stand-in for OpenWrt's include/package.mk. BuildPackage checks what the real one requires of a
# package (PKG_NAME/VERSION/RELEASE/LICENSE; SECTION, CATEGORY, TITLE; an install recipe), each
# Download for URL, FILE and a sha256 HASH, and makes targets that print the metadata
# (lint-metadata) and run the recipes (lint-prepare, lint-configure, lint-install: use make -n,
# or run lint-install for real into STUB_WORK/root).
DOWNLOADS:=

define Download
  $$(if $$(strip $$(Download/$(1))),,$$(error Download/$(1) is not defined))
  $$(eval $$(Download/$(1)))
  $$(if $$(URL),,$$(error Download/$(1): URL missing))
  $$(if $$(FILE),,$$(error Download/$(1): FILE missing))
  $$(if $$(shell echo '$$(HASH)' | grep -Ex '[0-9a-f]{64}'),,$$(error Download/$(1): HASH is not a sha256))
  DOWNLOADS += $(1):$$(URL)/$$(FILE)
  URL:=
  FILE:=
  HASH:=
endef

define BuildPackage
  $$(foreach v,PKG_NAME PKG_VERSION PKG_RELEASE PKG_LICENSE,$$(if $$($$(v)),,$$(error $$(v) missing)))
  $$(eval $$(Package/$(1)))
  $$(foreach v,SECTION CATEGORY TITLE,$$(if $$($$(v)),,$$(error Package/$(1): $$(v) missing)))
  $$(if $$(value Package/$(1)/install),,$$(error Package/$(1)/install missing))
  PKG_DEPENDS_$(1):=$$(DEPENDS)
  PKG_USERID_$(1):=$$(USERID)

lint-metadata:
	@echo "package: $(1) $$(PKG_VERSION)-$$(PKG_RELEASE)"
	@echo "license: $$(PKG_LICENSE)"
	@echo "section: $$(SECTION) / $$(CATEGORY)"
	@echo "title: $$(TITLE)"
	@echo "depends: $$(PKG_DEPENDS_$(1))"
	@echo "userid: $$(PKG_USERID_$(1))"
	@echo "downloads: $$(DOWNLOADS)"
	@echo "conffiles: $$(strip $$(Package/$(1)/conffiles))"
	@echo "cmake options: $$(strip $$(CMAKE_OPTIONS))"

lint-prepare:
	$$(Build/Prepare)

lint-configure:
	$$(Build/Configure)

lint-install:
	$$(call Package/$(1)/install,$(STUB_WORK)/root)
endef
