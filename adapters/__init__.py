"""ESP adapters: Mailchimp, HubSpot, Klaviyo on one shared base."""
