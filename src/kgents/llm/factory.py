"""Build the configured LLM provider from ``Settings`` (once, at start-up).

The openai and anthropic SDKs are imported only when their provider is chosen: together they
take seconds to import, which every start of ``kgents serve`` (and so every restart after a
crash) would otherwise pay.
"""

from pydantic import SecretStr

from kgents.config import Settings
from kgents.errors import ProviderError
from kgents.llm.base import LLMProvider
from kgents.llm.demo import DemoProvider

NOT_CONFIGURED = "provider_not_configured"

# Sent when a self-hosted server (vLLM, Ollama, llama.cpp) needs no key: the SDKs insist on one.
_NO_KEY = "no-key"


def build_provider(settings: Settings) -> LLMProvider:
    """The provider named by ``settings.llm_provider``.

    ``openai`` and ``anthropic`` need an API key, except against a custom base URL (self-hosted
    servers often take none). Their ``check()`` lists the server's models with a timeout of at most
    5 s: no tokens are spent, yet it proves the server is reachable and accepts the key.

    Raises ``ProviderError`` (code ``provider_not_configured``) when a hosted provider has no key.
    """
    if settings.llm_provider == "openai":
        from kgents.llm.openai import OpenAIProvider

        return OpenAIProvider(
            api_key=_api_key("openai", settings.openai_api_key, settings.openai_base_url),
            base_url=settings.openai_base_url,
            model=settings.llm_model,
            timeout_seconds=settings.llm_timeout_seconds,
        )
    if settings.llm_provider == "anthropic":
        from kgents.llm.anthropic import AnthropicProvider

        return AnthropicProvider(
            api_key=_api_key("anthropic", settings.anthropic_api_key, settings.anthropic_base_url),
            base_url=settings.anthropic_base_url,
            model=settings.llm_model,
            timeout_seconds=settings.llm_timeout_seconds,
        )
    return DemoProvider(token_delay_ms=settings.demo_token_delay_ms)


def _api_key(provider: str, key: SecretStr | None, base_url: str | None) -> str:
    if key is not None and key.get_secret_value():
        return key.get_secret_value()
    if base_url:
        return _NO_KEY
    raise ProviderError(
        f"the {provider} provider needs an API key ({provider.upper()}_API_KEY)",
        code=NOT_CONFIGURED,
        retryable=False,
    )
