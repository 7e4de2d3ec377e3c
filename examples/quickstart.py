import asyncio

import aiobus


async def main() -> None:
    async with aiobus.connect("memory://") as bus:  # or amqp://, mqtt://, amqp1:// URLs
        async with bus.subscribe("orders.*", queue="billing", prefetch=20) as sub:
            confirm = await bus.publish("orders.created", {"id": 1}, headers={"tenant": "a"})
            print("confirmed", confirm.message_id)
            async for msg in sub:
                async with msg.process():  # ack on success, nack on exception
                    print("received", msg.topic, msg.json(), msg.headers)
                break


asyncio.run(main())
