"""Admin in the browser: tenants, plans, suspension, keys shown once, revocation that signs the
tenant's console out, and the live metering health."""

import re

from playwright.sync_api import Browser, Locator, Page, expect

from tests.conftest import ADMIN_TOKEN
from tests.console.conftest import (
    NARROW,
    WIDE,
    Console,
    browser_page,
    create_session,
    screenshot,
    sign_in,
)


def tenant_row(admin: Page, name: str) -> Locator:
    return admin.locator("#tenant-table tbody tr", has_text=name)


def test_admin_tenants_keys_and_revocation_signs_the_tenant_out(
    browser: Browser, console: Console
) -> None:
    with browser_page(browser, WIDE) as admin, browser_page(browser, WIDE) as tenant:
        admin.goto(console.url + "/")
        admin.get_by_label("Administrator, with the admin token").check()
        admin.get_by_label("Admin token", exact=True).fill("kg_admin_wrong")
        admin.get_by_role("button", name="Sign in").click()
        expect(admin.locator("#signin-error")).to_contain_text("admin token required")
        sign_in(admin, console, ADMIN_TOKEN, admin=True)
        expect(admin.get_by_role("link", name="Chat")).to_be_hidden()

        # Live metering health: numbers from GET /v1/admin/metering, refreshed every 2 s.
        expect(admin.locator("#health-outbox")).to_have_attribute(
            "data-value", re.compile(r"^\d+$")
        )
        expect(admin.locator("#health-dead")).to_have_attribute("data-value", re.compile(r"^\d+$"))
        expect(admin.locator("#health-updated")).to_contain_text("Live, updated")

        admin.get_by_label("Tenant name").fill("globex")
        admin.get_by_label("Plan", exact=True).fill("free")
        admin.get_by_role("button", name="Create tenant").click()
        expect(admin.locator("#tenants-status")).to_have_text("Tenant globex created on plan free.")
        row = tenant_row(admin, "globex")
        expect(row.get_by_label("Plan of globex")).to_have_value("free")

        row.get_by_label("Plan of globex").select_option("pro")
        expect(admin.locator("#tenants-status")).to_have_text("Plan of globex changed to pro.")
        expect(tenant_row(admin, "globex").get_by_label("Plan of globex")).to_have_value("pro")

        # An unknown plan is refused in the API's words.
        admin.get_by_label("Tenant name").fill("initech")
        admin.get_by_label("Plan", exact=True).fill("platinum")
        admin.get_by_role("button", name="Create tenant").click()
        expect(admin.locator("#tenants-error")).to_contain_text("platinum")
        expect(admin.locator("#tenants-error")).to_contain_text("422")

        # The keys panel of globex: a key is shown once, at creation.
        tenant_row(admin, "globex").get_by_role("button", name="Keys of globex").click()
        expect(admin.get_by_role("heading", name="Keys of globex")).to_be_visible()
        admin.get_by_label("Key name").fill("browser")
        admin.get_by_role("button", name="Create key").click()
        once = admin.locator("#key-once-value")
        expect(once).to_have_text(re.compile(r"^kg_live_\w{32}$"))
        key = once.inner_text()
        key_row = admin.locator("#key-table tbody tr", has_text="browser")
        expect(key_row.locator(".badge")).to_have_text("active")
        expect(admin.locator("#key-table")).not_to_contain_text(key)
        screenshot(admin, "20-admin-key-created")

        # The tenant signs in with the new key and works.
        sign_in(tenant, console, key)
        create_session(tenant, "Before revocation")
        # Its usage reached the metering processor, which now reports its lag.
        expect(admin.locator("#health-lag")).to_have_attribute(
            "data-value", re.compile(r"^\d+$"), timeout=10_000
        )

        # Suspended: refused (403) in the API's words, but still signed in.
        tenant_row(admin, "globex").get_by_role("button", name="Suspend globex").click()
        expect(tenant_row(admin, "globex").locator(".badge")).to_have_text("suspended")
        tenant.get_by_role("button", name="Refresh").click()
        expect(tenant.locator("#sessions-error")).to_contain_text("tenant suspended")
        expect(tenant.locator("#sessions-error")).to_contain_text("403 · tenant_suspended")
        tenant_row(admin, "globex").get_by_role("button", name="Reactivate globex").click()
        expect(tenant_row(admin, "globex").locator(".badge")).to_have_text("active")

        # Revoked: the tenant's next request is a 401 and the console signs out.
        admin.once("dialog", lambda dialog: dialog.accept())
        key_row.get_by_role("button", name="Revoke key browser").click()
        expect(key_row.locator(".badge")).to_have_text("revoked")
        expect(admin.locator("#key-once")).to_be_hidden()
        screenshot(admin, "21-admin-key-revoked")

        tenant.get_by_role("button", name="Refresh").click()
        expect(tenant.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(tenant.locator("#signin-error")).to_contain_text("Signed out: API key revoked")
        assert tenant.evaluate("() => sessionStorage.length") == 0
        screenshot(tenant, "22-tenant-signed-out")


def test_admin_on_a_narrow_screen(browser: Browser, console: Console) -> None:
    console.tenant_key("narrow-admin-co")
    with browser_page(browser, NARROW) as admin:
        sign_in(admin, console, ADMIN_TOKEN, admin=True)
        tenant_row(admin, "narrow-admin-co").get_by_role(
            "button", name="Keys of narrow-admin-co"
        ).click()
        expect(admin.locator("#key-table tbody tr")).to_have_count(1)
        width = admin.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"horizontal overflow on a narrow screen: {width}"
        screenshot(admin, "23-admin-narrow")
